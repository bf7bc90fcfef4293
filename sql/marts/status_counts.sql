-- sql/marts/status_counts.sql: how many batches are in each status now
create or replace view analytics.status_counts as

with

lifecycle as (

    select * from analytics.int_batch_lifecycle

),

final as (

    select
        status,
        count(*) as batches
    from lifecycle
    group by status

)

select * from final
