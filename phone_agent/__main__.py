from phone_agent.cli import main

main()
