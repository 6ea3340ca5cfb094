"""Who may see the dashboard. It reads the database directly, past the API's checks, so it
asks for a token itself, against the same token store (``monitor.store.tokens``).

While the store holds no token at all (a fresh database: the demo) the dashboard is open, as
the API is; ``monitor dashboard`` then listens on loopback only. Once any token exists every
page asks for a token with the ``read`` role (read, operator or admin), typed into a password
field and kept in this browser session's state; it is checked again on every run, so a
revoked token signs its session out at the next click. Actions (acknowledge, silence,
approve or reject a rollback) ask for an operator token of their own (``dashboards.actions``).
"""

from __future__ import annotations

import streamlit as st

from monitor.runtime import Runtime
from monitor.safe_output import markdown_text
from monitor.store.db import session_scope
from monitor.store.tokens import ANONYMOUS, Principal, any_token, find_principal

TOKEN_KEY = "monitor_dashboard_token"
LOGIN_FIELD_KEY = "monitor_dashboard_login_token"


def is_open(runtime: Runtime) -> bool:
    """True while the token store holds no token (open mode, as for the API)."""
    with session_scope(runtime.sessions) as session:
        return not any_token(session)


def principal_for(runtime: Runtime, token: str | None) -> Principal | None:
    """The active token's principal; None for an empty, unknown or revoked token."""
    token = (token or "").strip()
    if not token:
        return None
    with session_scope(runtime.sessions) as session:
        return find_principal(session, token)


def _login_form(runtime: Runtime) -> None:
    st.title("Imaging AI monitor")
    st.write("This dashboard needs a token with the read role (read, operator or admin). "
             "An administrator creates one with `monitor token create --name NAME --role "
             "read`.")
    with st.form("login"):
        token = st.text_input("Read token", type="password", key=LOGIN_FIELD_KEY)
        submitted = st.form_submit_button("Sign in", type="primary")
    if not submitted:
        return
    principal = principal_for(runtime, token)
    if principal is None:
        st.error("That is not a valid token (unknown or revoked).")
    elif not principal.may("read"):
        st.error(f"Token {principal.name!r} may not read: it needs the read role.")
    else:
        st.session_state[TOKEN_KEY] = token.strip()
        st.session_state.pop(LOGIN_FIELD_KEY, None)
        st.rerun()


def _sign_out() -> None:
    st.session_state.pop(TOKEN_KEY, None)


def require_reader(runtime: Runtime) -> Principal:
    """The signed-in reader (``anonymous`` in open mode); otherwise draws the sign-in form
    and stops the run."""
    principal = principal_for(runtime, st.session_state.get(TOKEN_KEY))
    if principal is None and is_open(runtime):  # a signed-in rerun needs one query, not two
        return ANONYMOUS
    if principal is not None and principal.may("read"):
        st.sidebar.caption(f"Signed in as **{markdown_text(principal.name)}**")
        st.sidebar.button("Sign out", key="sign_out_button", on_click=_sign_out)
        return principal
    if st.session_state.pop(TOKEN_KEY, None) is not None:
        st.warning("Your token is no longer valid (revoked?): sign in again.")
    _login_form(runtime)
    st.stop()
    raise AssertionError("unreachable: st.stop() ends the run")  # pragma: no cover
