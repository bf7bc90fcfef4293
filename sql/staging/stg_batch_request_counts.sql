-- sql/staging/stg_batch_request_counts.sql: request counts of each batch that reports them
create or replace view analytics.stg_batch_request_counts as

with

source as (

    select * from siliconflow.batch_request_counts

),

final as (

    -- a count below zero counts nothing: the API sent no count there (`case`, not `if`: the
    -- DuckDB 1.x users read the views with has no `if`)
    select
        batch_id,
        case when total >= 0 then total end as requests_total,
        case when completed >= 0 then completed end as requests_completed,
        case when failed >= 0 then failed end as requests_failed
    from source

)

select * from final
