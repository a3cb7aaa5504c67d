from hpcxfer.cli import main

raise SystemExit(main())
