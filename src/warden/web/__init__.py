"""The web console: the fleet, live consoles, replays and timelines in a browser.

A network front end like the SSH concentrator, served by the daemon on the fleet's
`[web] listen` address (docs/decisions/2026-12-07-web-console.md):

    auth.py      sans-io: principals, one-time login links, sessions, CSRF and Origin checks
    view.py      sans-io: what a principal may see and do, and the rows the pages show
    tls.py       the certificate: the fleet's, or one warden makes in WARDEN_HOME/keys
    assets.py    where the npm assets (xterm.js, asciinema-player) are, keyed by the lock
    backend.py   what the web console needs of the daemon (a Protocol), and nothing more
    glue.py      the one place that binds that Protocol to the daemon
    console.py   one browser console: a websocket on a terminal line, the concentrator's rules
    server.py    the aiohttp application: pages, JSON routes, live updates, the listener
    static/      the pages (plain HTML, CSS and JavaScript; no build step)
    assets/      package.json and package-lock.json of the npm assets
"""
