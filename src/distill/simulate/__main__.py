from distill.simulate.cli import main

raise SystemExit(main())
