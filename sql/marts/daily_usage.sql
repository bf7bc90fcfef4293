-- sql/marts/daily_usage.sql: requests, tokens and cost per UTC day a batch ended, per model
create or replace view analytics.daily_usage as

with

usage as (

    select * from analytics.batch_usage

),

lifecycle as (

    select * from analytics.int_batch_lifecycle

),

dated as (

    select
        usage.*,
        cast(timezone('UTC', lifecycle.ended_at) as date) as usage_date
    from usage
    inner join lifecycle
        on usage.batch_id = lifecycle.batch_id

),

final as (

    select
        usage_date,
        model,
        count(*) as batches,
        sum(requests) as requests,
        sum(requests_failed) as requests_failed,
        sum(prompt_tokens) as prompt_tokens,
        sum(completion_tokens) as completion_tokens,
        sum(total_tokens) as total_tokens,
        sum(estimated_cost) as estimated_cost
    from dated
    group by usage_date, model

)

select * from final
