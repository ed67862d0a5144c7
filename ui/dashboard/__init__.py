"""The Streamlit dashboard's pages (:mod:`ui.dashboard.pages`) and its one data module
(:mod:`ui.dashboard.data`). ``ui/app.py`` wires them together."""
