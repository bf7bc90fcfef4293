-- sql/marts/open_batches.sql: batches not yet terminal, how old and how far along
create or replace view analytics.open_batches as

with

lifecycle as (

    select * from analytics.int_batch_lifecycle

),

status_history as (

    select * from analytics.stg_batch_status_history

),

in_flight as (

    select * from lifecycle
    where not is_terminal

),

latest_observations as (

    select * from status_history
    qualify row_number() over (
        partition by batch_id
        order by observed_at desc, requests_completed desc nulls last
    ) = 1

),

counted as (

    select
        in_flight.batch_id,
        in_flight.endpoint,
        in_flight.status,
        in_flight.created_at,
        in_flight.in_progress_at,
        epoch(now()) - epoch(in_flight.created_at) as age_seconds,
        -- the last observation, else (no history yet) the counts on the batch itself
        coalesce(
            latest_observations.requests_total, in_flight.requests_total
        ) as requests_total,
        coalesce(
            latest_observations.requests_completed, in_flight.requests_completed
        ) as requests_completed,
        coalesce(
            latest_observations.requests_failed, in_flight.requests_failed
        ) as requests_failed,
        latest_observations.observed_at as last_observed_at
    from in_flight
    left join latest_observations
        on in_flight.batch_id = latest_observations.batch_id

),

final as (

    select
        batch_id,
        endpoint,
        status,
        created_at,
        in_progress_at,
        age_seconds,
        requests_total,
        requests_completed,
        requests_failed,
        requests_completed / nullif(requests_total, 0) as progress,
        last_observed_at
    from counted

)

select * from final
