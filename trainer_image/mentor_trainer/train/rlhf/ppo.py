"""PPO as sequence-level PPO with a learned baseline, on TRL's GRPOTrainer.

Why not TRL's PPOTrainer: TRL 1.x removed it. What this is, exactly:

- sampling, the reward terms, the reference-model KL (beta) and the clipped surrogate
  (epsilon = ppo.clipRange, ppo.updatesPerBatch passes over each generated batch) are
  GRPOTrainer's, unchanged;
- the advantage of a completion is its weighted reward minus V(prompt), a value head (one
  linear layer) on the policy's last hidden state of the prompt, instead of GRPO's group
  normalisation; every token of a completion gets its completion's advantage;
- the value head trains on the batch's rewards by squared error (weight
  ppo.valueLossCoefficient) on the (unit-length) features taken when the batch was sampled,
  at its own learning rate: the value loss trains the head only, not the policy.

It is not token-level PPO: there is no per-token value, no GAE and no reward shaping by the KL
(the KL is a loss term, as in GRPO). The value head starts at 0 (the first advantages are the
rewards) and is not saved: a resumed run learns it again.
"""

from __future__ import annotations

from .context import Built, RlhfRun
from .grpo import chat_template_kwargs, describe, online_arguments, training_prompts
from .rewards import reward_terms

# A linear probe on unit-length features: it must follow the mean reward within a few steps
# whatever the policy's learning rate (5e-6 by default, at which it would barely move).
VALUE_HEAD_LEARNING_RATE = 0.01


def value_baseline_trainer(base):
    """A subclass of TRL's GRPOTrainer (``base``, imported by the caller) with the value head."""
    import torch

    class ValueBaselineTrainer(base):
        def __init__(self, *args, value_loss_coefficient: float, **kwargs):
            super().__init__(*args, **kwargs)
            self.value_loss_coefficient = value_loss_coefficient
            hidden = self.accelerator.unwrap_model(self.model).config.get_text_config().hidden_size
            self.value_head = torch.nn.Linear(hidden, 1).to(self.accelerator.device)
            torch.nn.init.zeros_(self.value_head.weight)
            torch.nn.init.zeros_(self.value_head.bias)

        def create_optimizer(self, model=None):
            optimizer = super().create_optimizer(model)
            if not any(p is self.value_head.weight for group in optimizer.param_groups for p in group["params"]):
                optimizer.add_param_group(
                    {"params": list(self.value_head.parameters()), "lr": VALUE_HEAD_LEARNING_RATE, "weight_decay": 0.0}
                )
            return optimizer

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            # kept for the advantages: the parent only hands on group-normalised ones
            self._rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            return self._rewards_per_func

        @torch.no_grad()
        def _prompt_features(self, prompt_ids, prompt_mask):
            model = self.accelerator.unwrap_model(self.model)
            hidden = model(input_ids=prompt_ids, attention_mask=prompt_mask, output_hidden_states=True).hidden_states[-1]
            last = prompt_mask.shape[1] - 1 - prompt_mask.flip(1).int().argmax(1)  # the last real token (any padding side)
            features = hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()
            return torch.nn.functional.normalize(features, dim=-1)  # the value's scale is the head's, not the model's

        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            per_func = self._rewards_per_func
            rewards = (per_func * self.reward_weights.to(per_func.device).unsqueeze(0)).nansum(dim=1)
            rewards[torch.isnan(per_func).all(dim=1)] = torch.nan  # unscorable: no advantage, no value target
            local = len(inputs)
            rewards = rewards[self.accelerator.process_index * local : (self.accelerator.process_index + 1) * local]
            features = self._prompt_features(output["prompt_ids"], output["prompt_mask"])
            with torch.no_grad():
                values = self.value_head(features).squeeze(-1)
            output["advantages"] = torch.nan_to_num(rewards.to(values.device) - values, nan=0.0)
            output["returns"] = rewards.to(values.device)
            output["value_features"] = features
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["value"].append(values.mean().item())
            return output

        def _compute_loss(self, model, inputs):
            loss = super()._compute_loss(model, inputs)
            returns = inputs["returns"]
            scored = ~torch.isnan(returns)
            if not scored.any():
                return loss
            values = self.value_head(inputs["value_features"][scored]).squeeze(-1)
            value_loss = torch.nn.functional.mse_loss(values, returns[scored])
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["value_loss"].append(value_loss.item())
            # the parent's loss is already divided for gradient accumulation; the value loss must be too
            scale = self.current_gradient_accumulation_steps if mode == "train" else 1
            return loss + self.value_loss_coefficient * value_loss.to(loss.device) / scale

    return ValueBaselineTrainer


def build(run: RlhfRun) -> Built:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    config = run.config
    rows = training_prompts(run)
    terms = reward_terms(run, chat_template_kwargs(run), reward_model_term=True)
    arguments = run.arguments(
        GRPOConfig,
        **online_arguments(run, terms),
        epsilon=config.ppo.clip_range,
        num_iterations=config.ppo.updates_per_batch,
    )
    trainer = value_baseline_trainer(GRPOTrainer)(
        model=run.policy(),
        reward_funcs=[term.function for term in terms],
        args=arguments,
        train_dataset=Dataset.from_list(rows.rows),
        processing_class=run.tokenizer,
        callbacks=run.callbacks,
        value_loss_coefficient=config.ppo.value_loss_coefficient,
    )
    notes, lines = describe(terms, rows, run)
    ppo = config.ppo
    lines.append(
        f"- Advantage: reward minus a learned value of the prompt (sequence-level PPO, clip {ppo.clip_range:g}, "
        f"{ppo.updates_per_batch} updates per batch, value loss x {ppo.value_loss_coefficient:g}; no GAE)"
    )
    return Built(trainer=trainer, train_examples=len(rows.rows), notes=notes, card_lines=lines)
