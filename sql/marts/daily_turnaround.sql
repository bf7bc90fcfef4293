-- sql/marts/daily_turnaround.sql: outcomes and turnaround per UTC day of creation and endpoint
create or replace view analytics.daily_turnaround as

with

lifecycle as (

    select * from analytics.int_batch_lifecycle

),

dated as (

    select
        cast(timezone('UTC', created_at) as date) as created_date,
        endpoint,
        status,
        is_terminal,
        -- null unless the batch started, so the quantiles below skip the others
        queue_seconds,
        case
            when status = 'completed'
                then turnaround_seconds
        end as completed_turnaround_seconds,
        met_window
    from lifecycle

),

final as (

    select
        created_date,
        endpoint,
        count(*) as batches,
        count(*) filter (where status = 'completed') as completed,
        count(*) filter (where status = 'failed') as failed,
        count(*) filter (where status = 'expired') as expired,
        count(*) filter (where status = 'cancelled') as cancelled,
        count(*) filter (where not is_terminal) as in_flight,
        quantile_cont(completed_turnaround_seconds, 0.5) as turnaround_p50_s,
        quantile_cont(completed_turnaround_seconds, 0.9) as turnaround_p90_s,
        quantile_cont(completed_turnaround_seconds, 0.99) as turnaround_p99_s,
        quantile_cont(queue_seconds, 0.5) as queue_p50_s,
        quantile_cont(queue_seconds, 0.9) as queue_p90_s,
        (
            count(*) filter (where met_window)
            / nullif(count(*) filter (where is_terminal), 0)
        ) as window_met_rate
    from dated
    group by
        created_date,
        endpoint

)

select * from final
