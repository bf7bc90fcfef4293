-- sql/marts/daily_throughput.sql: completed batches and requests per UTC day and endpoint
create or replace view analytics.daily_throughput as

with

turnaround as (

    select * from analytics.batch_turnaround

),

batches as (

    select * from analytics.stg_batches

),

completed as (

    select
        cast(timezone('UTC', batches.completed_at) as date) as completed_date,
        turnaround.endpoint,
        turnaround.requests_completed,
        turnaround.requests_failed,
        turnaround.requests_per_second
    from turnaround
    inner join batches
        on turnaround.batch_id = batches.batch_id
    where turnaround.status = 'completed'

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
