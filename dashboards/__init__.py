"""The Streamlit quality dashboard (``dashboards/app.py``) and its shared helpers."""
