"""A virtual field on one Linux machine: every board a network namespace with its own link.

Modules: `spec` (the field file), `plan` (names, addresses, links: pure), `iproute` and
`impair` (iproute2, tc, nftables), `keys`, `sshd`, `brokers`, `daemons` (what runs inside),
`state` (what `up` created), `lifecycle` (`field_up`, `field_down`), `inventory` (the deploy
inventory of the boards), `control` (commands, link faults and counters on a live field),
`status`. See docs/field.md.
"""
