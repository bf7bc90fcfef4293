-- sql/staging/stg_batches.sql: one row per batch, renamed and typed for the models above it
create or replace view analytics.stg_batches as

with

source as (

    select * from siliconflow.batches

),

renamed as (

    select
        id as batch_id,
        endpoint,
        input_file_id,
        output_file_id,
        error_file_id,
        file_name,
        completion_window,
        -- statuses as other providers pad or shout them count the same (vocabulary.status_sql)
        lower(trim(status, e' \t\n\r\f' || chr(11))) as status,
        created_at,
        in_progress_at,
        expires_at,
        finalizing_at,
        completed_at,
        failed_at,
        expired_at,
        cancelling_at,
        cancelled_at,
        -- "24h" as documented; also "72 H", "1d", "30m", "3600s", "2w"
        regexp_extract(
            lower(completion_window),
            '^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$',
            ['amount', 'unit']
        ) as window_parts
    from source

),

final as (

    select
        * exclude (window_parts),
        try_cast(window_parts['amount'] as double) * case window_parts['unit']
            when 's' then 1
            when 'm' then 60
            when 'h' then 3600
            when 'd' then 86400
            when 'w' then 604800
        end as completion_window_seconds
    from renamed

)

select * from final
