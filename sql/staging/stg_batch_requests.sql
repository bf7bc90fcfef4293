-- sql/staging/stg_batch_requests.sql: one row per line of each loaded result file
create or replace view analytics.stg_batch_requests as

with

source as (

    select * from siliconflow.batch_requests

),

final as (

    select
        batch_id,
        kind,
        line,
        custom_id,
        status_code,
        request_id,
        model,
        finish_reason,
        prompt_tokens,
        completion_tokens,
        total_tokens,
        reasoning_tokens,
        cached_tokens,
        error_code,
        error_message,
        -- a line of the error file, or an output line that carries an error (a code or a
        -- message) or a non-2xx status
        (
            kind = 'error'
            or error_code is not null
            or error_message is not null
            or coalesce(status_code not between 200 and 299, false)
        ) as is_failed
    from source

)

select * from final
