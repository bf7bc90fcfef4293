-- sql/staging/stg_batch_request_counts.sql: request counts of each batch that reports them
create or replace view analytics.stg_batch_request_counts as

with

source as (

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
