"""The user's syntax, parsed and formatted in one place (pure: no sockets, no trio, no I/O).

* :mod:`.errors`: the exceptions a bad option, rule, address or filter raises.
* :mod:`.keyval`: QEMU's ``key=value,key=value`` lists (``,,`` is a comma in a value).
* :mod:`.options`: the ``-netdev user`` options as data: each one's parser, default, journal
  form and help line (:func:`slirptrio.config.parse_user_options` is their face).
* :mod:`.forward`: ``hostfwd=`` and ``guestfwd=`` rules.
* :mod:`.address`: ``[addr]:port`` (:func:`.address.hostport`, the one formatter), transport
  addresses (``unix:PATH``, ``tcp:HOST:PORT``), DNS upstreams and capture flow filters.

The submodules are imported by name; this package imports none of them (``config`` imports
``options``, which must not import ``config`` back through here).
"""
