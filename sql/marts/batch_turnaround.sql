-- sql/marts/batch_turnaround.sql: one row per batch, where its time went and how fast it ran
create or replace view analytics.batch_turnaround as

with

batches as (

    select * from analytics.stg_batches

),

request_counts as (

    select * from analytics.stg_batch_request_counts

),

ended as (

    select
        *,
        case
            when is_terminal
                then coalesce(completed_at, failed_at, expired_at, cancelled_at)
        end as ended_at
    from batches

),

durations as (

    select
        ended.batch_id,
        ended.endpoint,
        ended.status,
        ended.is_terminal,
        ended.created_at,
        ended.ended_at,
        ended.expires_at,
        ended.completed_at,
        ended.completion_window_seconds,
        epoch(ended.in_progress_at) - epoch(ended.created_at) as queue_seconds,
        epoch(ended.finalizing_at) - epoch(ended.in_progress_at) as processing_seconds,
        epoch(ended.completed_at) - epoch(ended.finalizing_at) as finalizing_seconds,
        epoch(ended.ended_at) - epoch(ended.created_at) as turnaround_seconds,
        request_counts.requests_total,
        request_counts.requests_completed,
        request_counts.requests_failed
    from ended
    left join request_counts
        on ended.batch_id = request_counts.batch_id

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
        -- a terminal batch either met its window or did not: an unknown deadline is a miss
        case
            when is_terminal
                then coalesce(status = 'completed' and completed_at <= expires_at, false)
        end as met_window,
        requests_total,
        requests_completed,
        requests_failed,
        case
            when processing_seconds > 0
                then requests_completed / processing_seconds
        end as requests_per_second
    from durations

)

select * from final
