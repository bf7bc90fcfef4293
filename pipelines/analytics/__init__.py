"""Transform and read: the SQL views, the report and what the notebooks share."""
