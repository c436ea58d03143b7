"""hbdeploy: the deploy flow of hello-birthday as one program.

scripts/deploy.sh runs `python -m hbdeploy`. The layout follows the flow:

    cli.py        the command line of scripts/deploy.sh (exit 2: usage, 1: a failed step)
    flow.py       verify artifact -> plan -> preflight -> prepare -> canary ->
                  promote | stop -> roll out -> verify -> smoke -> roll back on failure
    steps.py      named steps: a failure raises, names its step, and stops the deploy
    release.py    the artifact and its checksum
    canary.py     one canary loop over a metric source, judged by deploy/canary/verdict.py
    probes.py     synthetic requests per side, for a verdict at low traffic (AWS)
    stacks.py     THE table of CloudFormation stacks (deploy, plan, execute, rollback, tests)
    record.py     what was approved is what is checked: deployment records and plans
    targets/      local.py (HAProxy runtime API, stack.sh for processes) and
                  aws.py (CloudFormation, ALB, Auto Scaling, CloudWatch through boto3)
"""
