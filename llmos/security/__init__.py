"""The security lab: jailbreaks, prompt injection and data poisoning, attacked, defended and
measured on checkable stand-ins (stand_ins.py): probes.py makes the attempts, defenses.py
switches defenses on, harness.py (`llmos redteam`) runs and scores them, gcg.py optimises
adversarial suffixes (`llmos gcg`), poison.py plants and finds backdoors (`llmos poison`)."""
