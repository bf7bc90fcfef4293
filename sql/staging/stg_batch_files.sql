-- sql/staging/stg_batch_files.sql: each result file a sync tried, and how it went
create or replace view analytics.stg_batch_files as

with

source as (

    select * from siliconflow.batch_files

),

final as (

    select
        batch_id,
        kind,
        file_id,
        state,
        bytes,
        lines,
        bad_lines,
        attempts,
        loaded_at,
        message
    from source

)

select * from final
