"""distill-golf: knowledge distillation toolkit for the Parameter Golf challenge."""
