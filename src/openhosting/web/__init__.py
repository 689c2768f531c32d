"""The customer dashboard, served by the daemon at `/` to browsers: a small static front end
(HTML, CSS, JavaScript; no build step) over the API itself, signed in by a session cookie."""
