import sys

from aiaa_client.cli import main

sys.exit(main())
