-- sql/marts/model_prices.sql: batch prices per million tokens, from sql/seeds/model_prices.csv
create or replace view analytics.model_prices as

with

seed as (

    select * from analytics.seed_model_prices

),

prices as (

    select
        trim(model) as model,
        try_cast(input_per_million as double) as input_per_million,
        try_cast(output_per_million as double) as output_per_million,
        upper(trim(currency)) as currency,
        source,
        try_cast(as_of as date) as as_of
    from seed
    -- a price in no named currency prices nothing: its amounts could not be added up
    where
        nullif(trim(model), '') is not null
        and nullif(trim(currency), '') is not null

),

-- one price per model, names compared ignoring case: a model the file lists twice costs its
-- latest as_of price, and the higher one when the dates tie (an estimate had better err high)
final as (

    select *
    from prices
    qualify row_number() over (
        partition by lower(model)
        order by
            as_of desc nulls last,
            input_per_million desc nulls last,
            output_per_million desc nulls last,
            currency asc
    ) = 1

)

select * from final
