-- sql/marts/daily_throughput.sql: completed batches and requests per UTC day and endpoint
create or replace view analytics.daily_throughput as

with

lifecycle as (

    select * from analytics.int_batch_lifecycle

),

completed as (

    select
        cast(timezone('UTC', completed_at) as date) as completed_date,
        endpoint,
        requests_completed,
        requests_failed,
        requests_per_second
    from lifecycle
    where status = 'completed'

),

final as (

    select
        completed_date,
        endpoint,
        count(*) as batches_completed,
        cast(sum(requests_completed) as bigint) as requests_completed,
        cast(sum(requests_failed) as bigint) as requests_failed,
        (
            sum(requests_failed)
            / nullif(sum(requests_completed) + sum(requests_failed), 0)
        ) as request_failure_rate,
        median(requests_per_second) as batch_rps_p50
    from completed
    group by
        completed_date,
        endpoint

)

select * from final
