-- sql/staging/stg_batch_status_history.sql: each observed change of a batch's status or counts
create or replace view analytics.stg_batch_status_history as

with

-- counts stay null while a batch reports none, so their columns may be missing
expected_columns as (

    select
        null::varchar as batch_id,
        null::timestamptz as observed_at,
        null::varchar as status,
        null::bigint as requests_total,
        null::bigint as requests_completed,
        null::bigint as requests_failed
    where false

),

source as (

    select * from expected_columns
    union all by name
    select * from siliconflow.batch_status_history

),

final as (

    select
        batch_id,
        observed_at,
        lower(trim(status)) as status,
        requests_total,
        requests_completed,
        requests_failed
    from source

)

select * from final
