"""Streamlit screens of HS desk (UI only: they read widgets, call services, draw results)."""
