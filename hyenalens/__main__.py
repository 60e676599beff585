from hyenalens.cli import main

raise SystemExit(main())
