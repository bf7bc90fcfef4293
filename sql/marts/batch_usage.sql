-- sql/marts/batch_usage.sql: what ran inside each batch with a loaded result file, and its cost
create or replace view analytics.batch_usage as

with

files as (

    select * from analytics.stg_batch_files

),

requests as (

    select * from analytics.stg_batch_requests

),

lifecycle as (

    select * from analytics.int_batch_lifecycle

),

prices as (

    select * from analytics.model_prices

),

loaded as (

    select distinct batch_id
    from files
    where state = 'loaded'

),

totals as (

    select
        batch_id,
        count(*) as requests,
        count(*) filter (where is_failed) as requests_failed,
        sum(prompt_tokens) as prompt_tokens,
        sum(completion_tokens) as completion_tokens,
        sum(total_tokens) as total_tokens,
        sum(reasoning_tokens) as reasoning_tokens,
        sum(cached_tokens) as cached_tokens
    from requests
    group by batch_id

),

model_lines as (

    select
        batch_id,
        model,
        count(*) as output_lines
    from requests
    where kind = 'output' and model is not null
    group by batch_id, model

),

-- the most frequent model among a batch's output lines; a tie goes to the first name
batch_models as (

    select
        batch_id,
        model
    from model_lines
    qualify row_number() over (partition by batch_id order by output_lines desc, model asc) = 1

),

final as (

    select
        loaded.batch_id,
        lifecycle.endpoint,
        batch_models.model,
        coalesce(totals.requests, 0) as requests,
        coalesce(totals.requests - totals.requests_failed, 0) as requests_succeeded,
        coalesce(totals.requests_failed, 0) as requests_failed,
        totals.prompt_tokens,
        totals.completion_tokens,
        totals.total_tokens,
        totals.reasoning_tokens,
        totals.cached_tokens,
        case
            when lifecycle.processing_seconds > 0
                then totals.completion_tokens / lifecycle.processing_seconds
        end as completion_tokens_per_second,
        -- a price left blank matters only for tokens of its kind: an embeddings model needs
        -- no output price
        case
            when prices.model is not null
                then (
                    case
                        when totals.prompt_tokens > 0
                            then totals.prompt_tokens * prices.input_per_million
                        else 0
                    end
                    + case
                        when totals.completion_tokens > 0
                            then totals.completion_tokens * prices.output_per_million
                        else 0
                    end
                ) / 1e6
        end as estimated_cost,
        prices.currency
    from loaded
    left join totals
        on loaded.batch_id = totals.batch_id
    left join batch_models
        on loaded.batch_id = batch_models.batch_id
    left join lifecycle
        on loaded.batch_id = lifecycle.batch_id
    left join prices
        on lower(trim(batch_models.model)) = lower(prices.model)

)

select * from final
