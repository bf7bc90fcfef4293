-- sql/staging/stg_batch_request_counts.sql: request counts of each batch that reports them
create or replace view analytics.stg_batch_request_counts as

with

source as (

    select * from siliconflow.batch_request_counts

),

final as (

    -- a count below zero counts nothing: the API sent no count there
    select
        batch_id,
        if(total >= 0, total, null) as requests_total,
        if(completed >= 0, completed, null) as requests_completed,
        if(failed >= 0, failed, null) as requests_failed
    from source

)

select * from final
