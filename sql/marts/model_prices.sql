-- sql/marts/model_prices.sql: batch prices per million tokens, from sql/seeds/model_prices.csv
create or replace view analytics.model_prices as

with

seed as (

    select * from analytics.seed_model_prices

),

final as (

    select
        trim(model) as model,
        try_cast(input_per_million as double) as input_per_million,
        try_cast(output_per_million as double) as output_per_million,
        upper(trim(currency)) as currency,
        source,
        try_cast(as_of as date) as as_of
    from seed
    where nullif(trim(model), '') is not null

)

select * from final
