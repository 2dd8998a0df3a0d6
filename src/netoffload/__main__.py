from netoffload.cli import main

raise SystemExit(main())
