from slirptrio.cli import main

raise SystemExit(main())
