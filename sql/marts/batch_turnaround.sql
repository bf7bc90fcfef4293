-- sql/marts/batch_turnaround.sql: one row per batch, where its time went and how fast it ran
create or replace view analytics.batch_turnaround as

with

lifecycle as (

    select * from analytics.int_batch_lifecycle

),

final as (

    select
        batch_id,
        endpoint,
        status,
        created_at,
        ended_at,
        completion_window_seconds,
        queue_seconds,
        processing_seconds,
        finalizing_seconds,
        turnaround_seconds,
        met_window,
        requests_total,
        requests_completed,
        requests_failed,
        requests_per_second
    from lifecycle

)

select * from final
