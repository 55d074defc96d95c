"""The suite's support code: the adb daemon (adbd.py) and its harness (adb_env.py), the
pymobiledevice3 fakes (fake_pmd3.py), record factories (factories.py), headless Chromium
(chromium.py) and a private PostgreSQL server (pg_server.py)."""
