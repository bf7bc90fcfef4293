-- sql/intermediate/int_batch_lifecycle.sql: one row per batch, its events, end and durations
create or replace view analytics.int_batch_lifecycle as

with

batches as (

    select * from analytics.stg_batches

),

request_counts as (

    select * from analytics.stg_batch_request_counts

),

-- the one place SQL spells the terminal statuses: pipelines.vocabulary.TERMINAL_STATUSES
-- (tests/test_vocabulary_sql.py keeps them equal); every other model reads is_terminal
classified as (

    select
        *,
        coalesce(
            status in ('completed', 'failed', 'expired', 'cancelled'),
            false
        ) as is_terminal
    from batches

),

ended as (

    select
        *,
        case
            when is_terminal
                then coalesce(completed_at, failed_at, expired_at, cancelled_at)
        end as ended_at
    from classified

),

durations as (

    select
        *,
        epoch(in_progress_at) - epoch(created_at) as queue_seconds,
        epoch(finalizing_at) - epoch(in_progress_at) as processing_seconds,
        epoch(completed_at) - epoch(finalizing_at) as finalizing_seconds,
        epoch(ended_at) - epoch(created_at) as turnaround_seconds,
        -- a terminal batch either met its window or did not: an unknown deadline is a miss
        case
            when is_terminal
                then coalesce(status = 'completed' and completed_at <= expires_at, false)
        end as met_window
    from ended

),

counted as (

    select
        durations.*,
        request_counts.requests_total,
        request_counts.requests_completed,
        request_counts.requests_failed
    from durations
    left join request_counts
        on durations.batch_id = request_counts.batch_id

),

final as (

    select
        batch_id,
        input_file_id,
        output_file_id,
        error_file_id,
        endpoint,
        status,
        is_terminal,
        created_at,
        in_progress_at,
        expires_at,
        finalizing_at,
        completed_at,
        failed_at,
        expired_at,
        cancelling_at,
        cancelled_at,
        ended_at,
        completion_window,
        completion_window_seconds,
        queue_seconds,
        processing_seconds,
        finalizing_seconds,
        turnaround_seconds,
        met_window,
        requests_total,
        requests_completed,
        requests_failed,
        case
            when processing_seconds > 0
                then requests_completed / processing_seconds
        end as requests_per_second
    from counted

)

select * from final
