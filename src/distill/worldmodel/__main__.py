from distill.worldmodel.cli import main

raise SystemExit(main())
