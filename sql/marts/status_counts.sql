-- sql/marts/status_counts.sql: how many batches are in each status now
create or replace view analytics.status_counts as

with

batches as (

    select * from analytics.stg_batches

),

final as (

    select
        status,
        count(*) as batches
    from batches
    group by status

)

select * from final
