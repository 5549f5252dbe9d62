from warden.cli.main import main

raise SystemExit(main())
