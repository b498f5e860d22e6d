"""Storage for HS desk: typed models, engine and sessions, migrations, queries, photo store and export."""
