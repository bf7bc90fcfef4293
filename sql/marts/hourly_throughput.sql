-- sql/marts/hourly_throughput.sql: completed batches and requests per UTC hour and endpoint
create or replace view analytics.hourly_throughput as

with

lifecycle as (

    select * from analytics.int_batch_lifecycle

),

completed as (

    select
        -- the hour is cut in UTC, then kept as an instant (timestamptz)
        timezone('UTC', date_trunc('hour', timezone('UTC', completed_at))) as hour,
        endpoint,
        requests_completed,
        requests_failed
    from lifecycle
    where status = 'completed'

),

final as (

    select
        hour,
        endpoint,
        count(*) as batches_completed,
        cast(sum(requests_completed) as bigint) as requests_completed,
        cast(sum(requests_failed) as bigint) as requests_failed,
        sum(requests_completed) / 3600 as requests_per_second
    from completed
    group by
        hour,
        endpoint

)

select * from final
