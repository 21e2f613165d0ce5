from kt_stardist.cli import main

raise SystemExit(main())
