-- sql/marts/hourly_throughput.sql: completed batches and requests per UTC hour and endpoint
create or replace view analytics.hourly_throughput as

with

turnaround as (

    select * from analytics.batch_turnaround

),

batches as (

    select * from analytics.stg_batches

),

completed as (

    select
        -- the hour is cut in UTC, then kept as an instant (timestamptz)
        timezone('UTC', date_trunc('hour', timezone('UTC', batches.completed_at))) as hour,
        turnaround.endpoint,
        turnaround.requests_completed,
        turnaround.requests_failed
    from turnaround
    inner join batches
        on turnaround.batch_id = batches.batch_id
    where turnaround.status = 'completed'

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
