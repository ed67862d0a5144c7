"""The flowlake dashboard: ``flowlake ui --lake PATH`` or ``streamlit run ui/app.py`` with
``FLOWLAKE_LAKE`` set. This file only wires the pages (:mod:`ui.dashboard.pages`)."""

from __future__ import annotations

import streamlit as st

from ui.dashboard import data, pages

PAGES = {
    "Compare": pages.compare_page,
    "Branches": pages.branches_page,
    "Runs": pages.runs_page,
    "Diff": pages.diff_page,
}


def main() -> None:
    st.set_page_config(page_title="flowlake", layout="wide")
    where = data.lake_ref()
    if where.problem is not None or where.location is None:
        pages.start_page(where.problem)
        return
    st.sidebar.caption(f"lake: {where.location}")
    choice = st.sidebar.radio("page", list(PAGES), key="page")
    PAGES[choice](where.location)


main()
