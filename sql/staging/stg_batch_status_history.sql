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
        requests_total,
        requests_completed,
        requests_failed
    from source

)

select * from final
