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
        if(requests_total >= 0, requests_total, null) as requests_total,
        if(requests_completed >= 0, requests_completed, null) as requests_completed,
        if(requests_failed >= 0, requests_failed, null) as requests_failed
    from source

)

select * from final
