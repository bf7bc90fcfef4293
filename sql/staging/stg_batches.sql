-- sql/staging/stg_batches.sql: one row per batch, renamed and typed for the marts
create or replace view analytics.stg_batches as

with

-- dlt adds a column only once some batch has a value for it, so the timestamp of an
-- event that no batch has reached yet (failed_at, say) may be missing: this typed,
-- empty row lets the union below supply it as null
expected_columns as (

    select
        null::varchar as id,
        null::varchar as endpoint,
        null::varchar as input_file_id,
        null::varchar as output_file_id,
        null::varchar as error_file_id,
        null::varchar as file_name,
        null::varchar as completion_window,
        null::varchar as status,
        null::timestamptz as created_at,
        null::timestamptz as in_progress_at,
        null::timestamptz as expires_at,
        null::timestamptz as finalizing_at,
        null::timestamptz as completed_at,
        null::timestamptz as failed_at,
        null::timestamptz as expired_at,
        null::timestamptz as cancelling_at,
        null::timestamptz as cancelled_at
    where false

),

source as (

    select * from expected_columns
    union all by name
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
        -- statuses as other OpenAI-compatible providers shout them count the same
        lower(trim(status)) as status,
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
        coalesce(
            status in ('completed', 'failed', 'expired', 'cancelled'),
            false
        ) as is_terminal,
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
