"""The laptop side of AWS: the embedded endpoint, a template's resources in it, and `streams run`.

- `streams.local.endpoint`: moto's server on 127.0.0.1, and where commands find an endpoint;
- `streams.local.template`: a SAM or CloudFormation template turned into a plan (SAM translator);
- `streams.local.stack`: the plan turned into a stack in the endpoint (moto's CloudFormation);
- `streams.local.run`: a function of the stack, fed by its streams and queues (`LocalMapping`).

Nothing here ships to Lambda.
"""

from streams.local.endpoint import EmbeddedEndpoint, EndpointProcess, local_session, start_endpoint
from streams.local.run import LocalMapping
from streams.local.stack import DeployedStack, deploy_template, stack_outputs
from streams.local.template import TemplateFunction, plan_template, translate_template

__all__ = [
    "DeployedStack",
    "EmbeddedEndpoint",
    "EndpointProcess",
    "LocalMapping",
    "TemplateFunction",
    "deploy_template",
    "local_session",
    "plan_template",
    "stack_outputs",
    "start_endpoint",
    "translate_template",
]
