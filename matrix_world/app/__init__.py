"""The user-facing front: command-line plumbing (:mod:`.cli`), the world CLIs (:mod:`.world_cli`)
and the browser viewer (:mod:`.viewer`). Scripts call these; nothing below imports them."""
