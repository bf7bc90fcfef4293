-- sql/staging/stg_batch_request_counts.sql: request counts of each batch that reports them
create or replace view analytics.stg_batch_request_counts as

with

-- a count the API has never filled may have no column yet (see stg_batches)
expected_columns as (

    select
        null::varchar as batch_id,
        null::bigint as total,
        null::bigint as completed,
        null::bigint as failed
    where false

),

source as (

    select * from expected_columns
    union all by name
    select * from siliconflow.batch_request_counts

),

final as (

    select
        batch_id,
        total as requests_total,
        completed as requests_completed,
        failed as requests_failed
    from source

)

select * from final
