-- sql/staging/stg_batch_status_history.sql: each observed change of a batch's status or counts
create or replace view analytics.stg_batch_status_history as

with

source as (

    select * from siliconflow.batch_status_history

),

final as (

    select
        batch_id,
        observed_at,
        lower(trim(status, e' \t\n\r\f' || chr(11))) as status,
        -- a count below zero counts nothing, as in stg_batch_request_counts
        case when requests_total >= 0 then requests_total end as requests_total,
        case when requests_completed >= 0 then requests_completed end as requests_completed,
        case when requests_failed >= 0 then requests_failed end as requests_failed
    from source

)

select * from final
